"""Method adapters (installed as `ddbench.methods`).

Adding a method = one module here + one YAML card `<name>.yaml` + one line in `METHODS`.
Targets are resolved lazily, so listing methods imports nothing heavy.
"""

METHODS = {
    "random": "ddbench.methods.selection:RandomSelection",
    "first-n": "ddbench.methods.selection:FirstN",
    "herding": "ddbench.methods.selection:Herding",
    "kcenter": "ddbench.methods.selection:KCenter",
    "whole": "ddbench.methods.selection:WholeSplit",
    "sre2l": "ddbench.methods.sre2l:SRe2L",
    "cudd": "ddbench.methods.cudd:CUDD",
    "dit": "ddbench.methods.dit:DiTSampling",
    "minimax": "ddbench.methods.minimax:Minimax",
    "mgd3": "ddbench.methods.mgd3:MGD3",
    "acs": "ddbench.methods.acs:ACS",
    "acs-minimax": "ddbench.methods.acs:ACS",
    "igd": "ddbench.methods.igd:IGD",
    "igd-minimax": "ddbench.methods.igd:IGD",
}
