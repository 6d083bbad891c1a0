rule invert:
    input:
        model=rules.train.output.model,
        aligned=rules.align.output.aligned,
        splits=rules.split.output.splits,
        evaluator=rules.evaluator.output.evaluator,
    output:
        inversion=config["data"]["privacy"] + "/inversion.json",
    params:
        section=config["attack"],
        folder=config["data"]["privacy"],
    log:
        "logs/invert.log",
    shell:
        "fmix attack invert {input.model}/model.pt {input.aligned} {input.splits} {input.evaluator}/model.pt {params.folder} --params params.yaml > {log} 2>&1"
