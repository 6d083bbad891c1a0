rule export_policy:
    input:
        aligned=rules.align.output.aligned,
        splits=rules.split.output.splits,
        model=rules.train.output.model,
    output:
        masker=config["data"]["masker_adaptive"],
    params:
        section=config["export"],
    log:
        "logs/export_policy.log",
    shell:
        "fmix export {input.aligned} {input.splits}/public.csv {output.masker} --policy {input.model}/model.pt --params params.yaml > {log} 2>&1"
