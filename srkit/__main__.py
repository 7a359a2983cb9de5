from srkit.cli.main import run

raise SystemExit(run())
