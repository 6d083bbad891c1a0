# Thin root Snakefile: the rules live in workflow/rules/, the logic in the fmix package.
# Run: snakemake --cores 2   (reads params.yaml, the same file dvc.yaml reads)

configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export_policy.smk"
include: "workflow/rules/mask.smk"
include: "workflow/rules/evaluator.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/invert.smk"


rule all:
    input:
        rules.mask.output,
        rules.evaluate.output,
        rules.attack.output,
        rules.invert.output,
