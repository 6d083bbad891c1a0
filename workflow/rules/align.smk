rule align:
    input:
        images=config["data"]["images"],
    output:
        aligned=directory(config["data"]["aligned"]),
    params:
        section=config["align"],
    log:
        "logs/align.log",
    threads: config["align"]["workers"]
    shell:
        "fmix align {input.images} {output.aligned} --params params.yaml --quiet > {log} 2>&1"
