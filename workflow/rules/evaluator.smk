rule evaluator:
    input:
        aligned=rules.align.output.aligned,
        splits=rules.split.output.splits,
    output:
        evaluator=directory(config["data"]["evaluator"]),
    params:
        section=config["evaluator"],
    log:
        "logs/evaluator.log",
    threads: config["evaluator"]["threads"]
    shell:
        "fmix evaluator {input.aligned} {input.splits} {output.evaluator} --params params.yaml --quiet > {log} 2>&1"
