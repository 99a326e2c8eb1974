from simslm.cli import run

run()
