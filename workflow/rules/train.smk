rule train:
    input:
        aligned=rules.align.output.aligned,
        splits=rules.split.output.splits,
        masker=rules.export.output.masker,
    output:
        model=directory(config["data"]["model"]),
    params:
        section=config["train"],
    log:
        "logs/train.log",
    threads: config["train"]["threads"]
    shell:
        "fmix train {input.aligned} {input.splits} {output.model} --masker {input.masker} --params params.yaml --quiet > {log} 2>&1"
