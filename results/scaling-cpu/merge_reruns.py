"""combined.json/md/png: the main run with the Transformer's cells replaced by the two reruns."""
import json
import sys
from pathlib import Path

from resnetbk.bench import scaling

root = Path(sys.argv[1])
main = json.loads((root / "scaling.json").read_text())
rerun = {}
for sub in ("transformer-rerun", "transformer-rerun-2"):
    for c in json.loads((root / sub / "scaling.json").read_text())["cells"]:
        rerun[(c["model"], c["seq_len"], c["scope"])] = dict(c, source=sub)
cells = [rerun.get((c["model"], c["seq_len"], c["scope"]), dict(c, source="main run")) for c in main["cells"]]
replaced = sum(c["source"] != "main run" for c in cells)
context = (f"The main run ({main['run_info']['command']}, {main['run_info']['started']} to "
           f"{main['run_info']['finished']}) with the Transformer's cells at N = 128 .. 32,768 ({replaced} cells) "
           "replaced by two reruns of the Transformer alone (transformer-rerun/, transformer-rerun-2/): while the main run "
           "measured them, a low-priority test process ran beside it. Every other cell is the main run's; "
           "settings identical. " + f"Machine: {main['run_info']['machine']}.")
(root / "combined.json").write_text(json.dumps({"complete": True, "sources": ["scaling.json", "transformer-rerun/scaling.json",
    "transformer-rerun-2/scaling.json"], "settings": main["settings"], "cells": cells,
    "crossover": {s: scaling.crossover(cells, s) for s in scaling.SCOPES}}, indent=2) + "\n")
(root / "combined.md").write_text(scaling.format_markdown(cells, main["settings"], context))
scaling.plot(cells, root / "combined.png")
print(replaced)
