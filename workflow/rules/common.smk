# Loaded first by the Snakefile, by hand (never generated): checks on params at load time go here.
