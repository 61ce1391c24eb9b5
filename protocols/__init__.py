"""Protocol families and cards (installed as `ddbench.protocols`).

A card `<name>.yaml` holds `family`, `version` and every value that can move a number; its family is the
module `<family>.py` here, which exposes its `Protocol` subclass as `PROTOCOL`. Adding a card is one YAML
file; a new family is one module. Cards are listed by `ddbench list protocols` and loaded by
`ddbench.protocol.load_protocol(name, overrides)`. See docs/protocols.md for every card's values and sources.
"""
