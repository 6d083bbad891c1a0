rule export:
    input:
        aligned=rules.align.output.aligned,
        splits=rules.split.output.splits,
    output:
        masker=config["data"]["masker"],
    params:
        section=config["export"],
    log:
        "logs/export.log",
    shell:
        "fmix export {input.aligned} {input.splits}/public.csv {output.masker} --params params.yaml > {log} 2>&1"
