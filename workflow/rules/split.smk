rule split:
    input:
        aligned=rules.align.output.aligned,
    output:
        splits=directory(config["data"]["splits"]),
    params:
        section=config["split"],
    log:
        "logs/split.log",
    shell:
        "fmix split {input.aligned} {output.splits} --params params.yaml > {log} 2>&1"
