# Smile datasets: download, GENKI-4K face crops from the final detector, deduplicated folds.


rule download_genki4k:
    input:
        COMMON_DEPS,
        "stages/smiles_download.py",
        "stages/download.py",
    output:
        directory(SMILES_RAW["genki4k"]),
    params:
        smiles_download=config["smiles_download"],
    log:
        f"logs/{SMILES_RAW['genki4k']}.log",
    shell:
        f"python -m stages.smiles_download {PARAMS_ARGS} --dataset genki4k --out {SMILES_RAW['genki4k']}"
        " 2>&1 | tee {log}"


rule download_smilesmiled:
    input:
        COMMON_DEPS,
        "stages/smiles_download.py",
        "stages/download.py",
    output:
        directory(SMILES_RAW["smilesmiled"]),
    params:
        smiles_download=config["smiles_download"],
    log:
        f"logs/{SMILES_RAW['smilesmiled']}.log",
    shell:
        f"python -m stages.smiles_download {PARAMS_ARGS} --dataset smilesmiled --out {SMILES_RAW['smilesmiled']}"
        " 2>&1 | tee {log}"


rule crop_faces:
    input:
        COMMON_DEPS,
        "stages/crop_faces.py",
        "stages/facecrop.py",
        "stages/predict.py",
        "stages/smiles_download.py",
        "stages/smiles_split.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        "stages/classifier.py",
        "stages/download.py",
        SMILES_RAW["genki4k"],
        FINAL_DETECTOR,
    output:
        directory(GENKI_CROPS_DIR),
    params:
        max_samples=config["smiles"]["max_samples"],
        folds=config["smiles"]["folds"],
        crop=config["smiles"]["crop"],
    log:
        f"logs/{GENKI_CROPS_DIR}.log",
    shell:
        f"python -m stages.crop_faces {PARAMS_ARGS} --raw {SMILES_RAW['genki4k']} --detector {FINAL_DETECTOR}"
        f" --out {GENKI_CROPS_DIR} 2>&1 | tee {{log}}"


rule split_smiles:
    input:
        COMMON_DEPS,
        "stages/smiles_split.py",
        GENKI_CROPS_DIR,
        SMILES_RAW["smilesmiled"],
    output:
        directory(SMILES_SPLITS_DIR),
        SMILES_SUMMARY,
    params:
        max_samples=config["smiles"]["max_samples"],
        folds=config["smiles"]["folds"],
        seed=config["smiles"]["seed"],
    log:
        f"logs/{SMILES_SPLITS_DIR}.log",
    shell:
        f"python -m stages.smiles_split {PARAMS_ARGS} --genki4k {GENKI_CROPS_DIR}/crops.csv"
        f" --smilesmiled {SMILES_RAW['smilesmiled']} --out {SMILES_SPLITS_DIR} --summary {SMILES_SUMMARY}"
        " 2>&1 | tee {log}"
