"""Method adapters (installed as `ddbench.methods`).

Adding a method = one module here + one YAML card `<name>.yaml` + one line in `METHODS`.
Targets are resolved lazily, so listing methods imports nothing heavy.
"""

METHODS = {
    "random": "ddbench.methods.selection:RandomSelection",
    "first-n": "ddbench.methods.selection:FirstN",
    "herding": "ddbench.methods.selection:Herding",
    "kcenter": "ddbench.methods.selection:KCenter",
}
