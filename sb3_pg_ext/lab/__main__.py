"""``python -m sb3_pg_ext.lab <run|report|options> ...``"""

from sb3_pg_ext.lab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
