"""Stage 1 (BayesTune-LoRA λ training) run by the reference's own code, to tell a defect in our
Stage 1 from a property of the regime: does the reference give data-dependent λ when a client
takes as few optimiser steps as the committed e5 run gives it?

The loss (`significance_loss`, `sparsity_loss`, the straight-through clamp), the λ-in-the-forward
LoRA layer (`fedbt_convert_lora_btlora`, `fedbt_update_bts`) and the Trainer subclass
(`FedP2EFTSeqClsTrainer`, HF Trainer with its default max_grad_norm 1.0) are imported from a
checkout of SamsungLabs/fedp2eft at eb79464 — nothing of them is re-implemented here. Only
packages the computation never calls are stubbed so the modules import (flwr, trl, the bnb LoRA
classes). The optimiser is built as `two_stage_finetune` builds it (AdamW lr 1e-4, wd 0, constant
schedule; λ added as a param group at lr 1e-2); λ starts at 1e-4 (the BayesTune-LoRA baseline).

Model: multilingual-e5-small with a fresh 7-way head (seeded), PEFT LoRA r 32, α 64, all-linear,
dropout 0 (74 modules). Data: two MasakhaNEWS languages' first 32 test rows each (headline +
text, as `preprocess_function` with padding max_length 32) — the e5 run's client size and
max_len. For each (language, dtype, epochs) the script reports how many distinct λ values there
are, their spread and the top-k overlap between the two languages at budget 2 (k = 2 · 74).

Pinned versions: torch==2.9.1 transformers==4.44.2 peft==0.12.0 accelerate==0.34.2
numpy==2.2.6 (CPU). Run from the repository root:
    python results/examples/masakhanews-e5/diagnosis/reference_stage1.py \
        --ref REF_CHECKOUT --data $FEDP2EFT_DATA --out results/examples/masakhanews-e5/diagnosis
"""
import argparse
import json
import os
import sys
import time
import types

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import (BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, Trainer,
                          TrainingArguments, get_constant_schedule)

LANGS = ["hau", "swa"]
ROWS = 32
MAX_LEN = 32
BATCH = 8
R_MAX = 32
SEED = 42


def import_reference(ref):
    """The reference's btlora layer and trainers, without its app stack."""
    flwr = types.ModuleType("flwr")
    flwr.common = types.SimpleNamespace(NDArrays=list)
    sys.modules["flwr"] = flwr
    trl = types.ModuleType("trl")
    trl.SFTTrainer = type("SFTTrainer", (Trainer,), {})
    sys.modules["trl"] = trl
    bnb = types.ModuleType("peft.tuners.lora.bnb")  # needs bitsandbytes; never used here
    bnb.Linear8bitLt = type("Linear8bitLt", (), {})
    bnb.Linear4bit = type("Linear4bit", (), {})
    sys.modules["peft.tuners.lora.bnb"] = bnb
    for pkg, sub in [("src", ""), ("src.models", "models"), ("src.models.btlora", "models/btlora"),
                     ("src.apps", "apps"), ("src.apps.clients", "apps/clients")]:
        mod = types.ModuleType(pkg)
        mod.__path__ = [os.path.join(ref, "src", sub)]
        sys.modules[pkg] = mod
    import src.apps.clients.fedp2eft_trainers as trainers
    import src.models.btlora.layer as layer
    return layer, trainers


def rows(data, lang, tokenizer, labels):
    path = os.path.join(data, "masakhanews", lang, "test.tsv")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        out = []
        for line in f:
            rec = dict(zip(header, line.rstrip("\n").split("\t")))
            enc = tokenizer(rec["headline"] + " " + rec["text"], padding="max_length",
                            max_length=MAX_LEN, truncation=True)
            enc["labels"] = labels.index(rec["category"])
            out.append(enc)
            if len(out) == ROWS:
                return out
    raise SystemExit(f"{path}: fewer than {ROWS} rows")


def stage1(layer, trainers, model_dir, tokenizer, dataset, dtype, epochs):
    torch.manual_seed(SEED)  # the reference seeds once before the adapters are created
    # The imported safetensors carry no "format: pt" metadata, which from_pretrained insists on.
    config = BertConfig.from_pretrained(model_dir, num_labels=7)
    base = BertForSequenceClassification(config)  # seeded fresh head (and pooler if absent)
    weights = {"bert." + k: v for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
    missing, unexpected = base.load_state_dict(weights, strict=False)
    assert not unexpected and all(m.startswith(("classifier", "bert.pooler")) for m in missing), missing
    base = base.to(dtype)
    net = get_peft_model(base, LoraConfig(r=R_MAX, lora_alpha=2 * R_MAX, lora_dropout=0.0,
                                          bias="none", target_modules="all-linear"))
    layer.fedbt_convert_lora_btlora(net)
    modules = layer.fedbt_get_input_output_sizes(net)[1]
    init = torch.full((modules * R_MAX,), 1e-4, dtype=dtype).split(R_MAX)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4,
                                  weight_decay=0)
    layer.fedbt_update_bts(net, init, to_params=True)
    bts = layer.fedbt_get_bts(net)
    optimizer.add_param_group({"params": bts, "lr": 1e-2})
    args = TrainingArguments(output_dir="/tmp/ref-stage1", per_device_train_batch_size=BATCH,
                             num_train_epochs=epochs, report_to="none", save_strategy="no",
                             logging_steps=10**6, seed=SEED, use_cpu=True)
    trainer = trainers.FedP2EFTSeqClsTrainer(
        loss_weights={"task": 1.0, "significance": 100.0, "sparsity": 0.01},
        bts_max_clamp=1000.0, model=net, tokenizer=tokenizer,
        optimizers=(optimizer, get_constant_schedule(optimizer)), args=args,
        train_dataset=dataset)
    steps = trainer.train().global_step
    lam = torch.stack([b.detach().float() for b in layer.fedbt_get_bts(net)])
    return modules, steps, lam  # raw λ, as the PSG regresses onto before the final clamp


def describe(lam):
    flat = lam.flatten().numpy().astype(np.float64)
    return {
        "mean": float(flat.mean()), "min": float(flat.min()), "max": float(flat.max()),
        "sd": float(flat.std()),
        "distinct_1e-7": int(np.unique(np.round(flat / 1e-7)).size),
        "distinct_exact": int(np.unique(flat).size),
        "module_mean_sd": float(lam.mean(dim=1).std()),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="checkout of SamsungLabs/fedp2eft at eb79464")
    ap.add_argument("--model", default="models/multilingual-e5-small")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", default="2", help="comma list of epoch counts")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    layer, trainers = import_reference(a.ref)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.model, "tokenizer.json"),
                                        pad_token="<pad>", cls_token="<s>", sep_token="</s>")
    labels = open(os.path.join(a.data, "masakhanews", LANGS[0], "labels.txt")).read().split()
    data = {lang: rows(a.data, lang, tokenizer, labels) for lang in LANGS}
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        for epochs in [int(e) for e in a.epochs.split(",")]:
            lams = {}
            for lang in LANGS:
                t0 = time.time()
                modules, steps, lam = stage1(layer, trainers, a.model, tokenizer, data[lang],
                                             dtype, epochs)
                lams[lang] = lam
                row = {"dtype": str(dtype).split(".")[1], "epochs": epochs, "lang": lang,
                       "steps": steps, "modules": modules, "seconds": round(time.time() - t0, 1),
                       **describe(lam)}
                print(json.dumps(row), flush=True)
                results.append(row)
            k = 2 * modules
            tops = [set(torch.topk(lams[l].flatten(), k, sorted=False).indices.tolist())
                    for l in LANGS]
            corr = float(np.corrcoef(lams[LANGS[0]].flatten(), lams[LANGS[1]].flatten())[0, 1])
            row = {"dtype": str(dtype).split(".")[1], "epochs": epochs,
                   "top_k_overlap_budget2": len(tops[0] & tops[1]) / k,
                   "lambda_corr_between_langs": corr}
            print(json.dumps(row), flush=True)
            results.append(row)
    with open(os.path.join(a.out, "reference_stage1.json"), "w") as f:
        json.dump({"versions": {"torch": torch.__version__}, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
