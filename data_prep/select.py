"""Select deita-6k / deita-10k from a scored, embedded pool: score first, diversity aware.

    python data_prep/select.py --config recipes/select/deita-mistral-7b.yaml [--key value ...]
    python data_prep/select.py --config recipes/select/deita-mistral-7b.yaml --explain ID [--explain ID ...]

Joins scores and embeddings by id, runs the selection once with the largest budget (smaller
budgets are its prefixes) and writes one folder per budget (JSONL in selection order, dataset card,
manifest), selection_stats.json, selection_trace.jsonl, rejects.jsonl and manifest.json into
``output_dir``. With ``--explain``, says why each id was or was not selected, from the stored trace
when the stored selection is current (same inputs and settings), else after running it.
The logic is `deita_train.select_step` (`main` there is this command).
"""

import os
import sys


if __name__ == "select":
    # This file shares its name with the standard library's `select`. While any script in data_prep/
    # runs, data_prep/ is on sys.path, so `import select` (socket, subprocess, asyncio ...) lands
    # here: load the real module, put it in sys.modules (which the import returns) and do nothing else.
    import importlib.machinery
    import importlib.util

    _here = os.path.realpath(os.path.dirname(__file__))
    _path = [p for p in sys.path if os.path.realpath(p or os.curdir) != _here]
    _spec = importlib.machinery.BuiltinImporter.find_spec("select") or importlib.machinery.PathFinder.find_spec(
        "select", _path
    )
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    sys.modules["select"] = _module
else:
    _here = os.path.realpath(os.path.dirname(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _here]  # keep the stdlib `select`
    sys.path.insert(0, os.path.dirname(_here))  # run from a checkout without installing

    from deita_train.select_step import main

    if __name__ == "__main__":
        main()
