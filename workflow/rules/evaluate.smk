rule evaluate:
    input:
        model=rules.train.output.model,
        aligned=rules.align.output.aligned,
        splits=rules.split.output.splits,
    output:
        metrics=config["data"]["metrics"],
    params:
        section=config["evaluate"],
    log:
        "logs/evaluate.log",
    shell:
        "fmix evaluate {input.model}/model.pt {input.aligned} {input.splits} {output.metrics} --params params.yaml > {log} 2>&1"
