rule attack:
    input:
        masker=rules.export_policy.output.masker,
        aligned=rules.align.output.aligned,
        splits=rules.split.output.splits,
        evaluator=rules.evaluator.output.evaluator,
        model=rules.train.output.model,
        metrics=rules.evaluate.output.metrics,
        protected=rules.mask.output.protected,
    output:
        privacy=config["data"]["privacy"] + "/privacy.json",
        unmix=config["data"]["privacy"] + "/unmix.json",
    params:
        section=config["attack"],
        folder=config["data"]["privacy"],
    log:
        "logs/attack.log",
    shell:
        "fmix attack reconstruct {input.masker} {input.aligned} {input.splits} {input.evaluator}/model.pt {params.folder} --policy {input.model}/model.pt --metrics {input.metrics} --method adaptive --release {input.protected} --params params.yaml > {log} 2>&1"
