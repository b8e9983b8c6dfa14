#!/usr/bin/env python3
"""Write config.transformers5.json next to config.json: the config exactly as transformers 5
serializes it (rope_parameters / layer_types instead of rope_theta, global_rope_theta, ...).

Runs under the transformers-5 side venv that scripts/make-fixture-venv.sh builds next to the
main one (<venv>-tf5, no torch needed for configs); scripts/make_tiny_models.py calls it.

    <venv>-tf5/bin/python scripts/tf5_config.py FOLDER [FOLDER ...]
"""
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import transformers  # noqa: E402

assert transformers.__version__.startswith("5."), transformers.__version__

for folder in map(Path, sys.argv[1:]):
    cfg = transformers.AutoConfig.from_pretrained(str(folder))
    with tempfile.TemporaryDirectory() as tmp:
        cfg.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "config.json", folder / "config.transformers5.json")
    print(f"tf5_config: {folder.name}/config.transformers5.json (transformers {transformers.__version__})", file=sys.stderr)
