from fmix.cli import app

app()
