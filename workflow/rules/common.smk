# Loaded first by the Snakefile, by hand (never generated): checks on params at load time go here.
# The whole params file is checked before any rule is built, so a misspelled section, key or value
# fails in seconds with the same message `fmix --params` gives.
from fmix.data.root import apply_data_root
from fmix.params import ParamsError, validate_params
from snakemake.exceptions import WorkflowError

try:
    validate_params(config, "params.yaml")
except ParamsError as err:
    raise WorkflowError(f"params.yaml: {err}") from None

# Data under the default root (../shared/data) moves under $FMIX_DATA when it is set (fmix.data.root);
# the commands then read the params copy that holds the moved paths (params_file_for in the Snakefile).
apply_data_root(config)
