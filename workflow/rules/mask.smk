rule mask:
    input:
        aligned=rules.align.output.aligned,
        splits=rules.split.output.splits,
        masker=rules.export_policy.output.masker,
    output:
        protected=directory(config["data"]["protected"]),
    params:
        section=config["mask"],
    log:
        "logs/mask.log",
    shell:
        "fmix mask {input.aligned} {output.protected} --masker {input.masker} --faces {input.splits}/private_train.csv --params params.yaml --quiet > {log} 2>&1"
