"""One folder per domain; `dg.load_from_defs_folder` (covid_lakehouse/definitions.py) loads them all."""
