"""`aromni build` for tests whose --out is a URL, until the CLI's --out option is a string (typer's Path would turn
s3://b/x into s3:/b/x). Same exit codes and messages as the CLI: 0, 1 (build error), 2 (recipe error).
Usage: python build_url.py RECIPE OUT WORKERS [--force] [key=value ...]"""
from __future__ import annotations

import sys

from aromni.pipeline.build import BuildError, build
from aromni.pipeline.mix import MixError
from aromni.recipe import RecipeError, load_recipe

if __name__ == "__main__":
    recipe, out, workers, *rest = sys.argv[1:]
    force = "--force" in rest
    try:
        rep = build(load_recipe(recipe, [a for a in rest if a != "--force"]), out, workers=int(workers),
                    force=force, progress=False)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (BuildError, MixError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"units: {rep.units_total} ({rep.units_skipped} already done)")
