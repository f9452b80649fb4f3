"""Run ``snows-hf demo`` (its code, its defaults) and keep what it printed as JSON.

The README's demo table and the sentences about it are generated from the file this
writes (``benchmarks/readme_results.py``), so the table shown is the one this run printed.

    python benchmarks/demo_figures.py     # a few minutes on 2 CPU cores; needs snows-hf[demo]
"""

from __future__ import annotations

import argparse
import tempfile

import record

from snows_hf.demo import DemoSettings, format_table, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    record.out_option(parser, "demo")
    args = parser.parse_args()
    settings = DemoSettings()
    with tempfile.TemporaryDirectory() as folder:
        figures = run_demo(f"{folder}/snows-hf-demo", settings=settings, progress=False)
    table = format_table(figures)
    print(table)
    record.write(args.out, {"settings": record.settings(args), "demo_settings": vars(settings), "figures": figures,
                            "table": table})


if __name__ == "__main__":
    main()
