# Loaded first by the Snakefile, by hand (never generated): checks on params at load time go here.
# The whole params file is checked before any rule is built, so a misspelled section, key or value
# fails in seconds with the same message `fmix --params` gives.
from fmix.params import ParamsError, validate_params
from snakemake.exceptions import WorkflowError

try:
    validate_params(config, "params.yaml")
except ParamsError as err:
    raise WorkflowError(f"params.yaml: {err}") from None
