"""The servers compared in the serving benchmark, each a script: `python -m ... MODEL PORT`."""
