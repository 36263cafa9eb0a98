"""prism's own methods, backbones, benchmarks and metrics, registered through the
same hooks a third-party plugin uses. Strings only: nothing heavy is imported here."""

from __future__ import annotations

from prism import hookimpl


@hookimpl
def register_methods(register):
    register("zeroshot", "prism.methods.zeroshot:ZeroShot",
             "the base model with no training: the lower reference")
    register("ft_lora", "prism.methods.ft_lora:FineTuneLoRA",
             "one LoRA trained on each task in turn, nothing against forgetting")
    register("ewc", "prism.methods.ewc:EWC", "one LoRA + diagonal-Fisher penalty pulling weights toward earlier tasks' optima")
    register("olora", "prism.methods.olora:OLoRA", "a new LoRA slot per task, orthogonal to earlier slots; all slots summed at inference")
    register("moelora", "prism.methods.moelora:MoELoRA",
             "E LoRA experts per layer mixed per token by a softmax router; all train on every task")
    register("clmoe", "prism.methods.clmoe:CLMoE",
             "LoRA experts with instance and task-level routers; experts merged by dual momentum after each task")
    register("smolora", "prism.methods.smolora:SMoLoRA",
             "visual and instruction LoRA experts per layer, each chosen top-1 by its own router, fused per token")
    register("same", "prism.methods.same:SAME",
             "MoE-LoRA with a spectral-aware router, curvature-preconditioned experts and adaptive expert freezing")
    register("modal_prompt", "prism.methods.modal_prompt:ModalPrompt",
             "frozen model; per-task prompts inserted after BOS, chosen by CLIP image/text prototype similarity")
    register("hide_llava", "prism.methods.hide_llava:HiDeLLaVA",
             "a LoRA slot per task; the top layer mixes slots by CLIP anchor similarity, lower layers fuse them")
    register("disco", "prism.methods.disco:DisCo",
             "a LoRA subspace per task, mixed per sample by instruction-prototype similarity")
    register("joint", "prism.methods.joint:Joint",
             "one LoRA trained on the union of all tasks' data: the multi-task upper bound")
    register("replay_lora", "prism.methods.replay_lora:ReplayLoRA",
             "one LoRA; each task's data mixed with a buffer of earlier tasks' samples")


@hookimpl
def register_backbones(register):
    register("llava", "prism.backbones.llava:LlavaBackbone",
             "LLaVA-1.5 (transformers LlavaForConditionalGeneration, llava-hf format)")
    register("internvl", "prism.backbones.internvl:InternVLBackbone",
             "InternVL-Chat 1.0 (LLaVA-1.5 with an InternViT-6B tower; llava-hf or original format)")


@hookimpl
def register_benchmarks(register):
    register("synthetic", "prism.benchmarks.synthetic:SyntheticBenchmark",
             "generated shapes benchmark, 5 tasks, runs on a laptop CPU in minutes")
    register("ucit", "prism.benchmarks.ucit:UCITBenchmark",
             "UCIT (HiDe-LLaVA), 6 tasks: ImageNet-R, ArxivQA, VizWiz-Caption, IconQA, CLEVR-Math, Flickr30k")
    register("coin", "prism.benchmarks.coin:CoINBenchmark",
             "CoIN, 8 tasks: ScienceQA, TextVQA, ImageNet, GQA, VizWiz, Grounding, VQAv2, OCR-VQA")
    register("trigap", "prism.benchmarks.trigap:TriGapBenchmark",
             "TriGap (PRISM), 10 tasks from medical, document, chart, driving and science VQA")


@hookimpl
def register_metrics(register):
    register("exact_match", "prism.evaluation.metrics:exact_match",
             "case-insensitive exact match after stripping (upper-cased comparison)")
    register("exact_match_normalized", "prism.evaluation.metrics:exact_match_normalized",
             "exact match after VQA-style normalisation (punctuation, articles, number words)")
    register("containment", "prism.evaluation.metrics:containment",
             "answer contained in prediction or prediction in answer (lower-cased)")
    register("option_accuracy", "prism.evaluation.metrics:option_accuracy",
             "the option letter chosen in the prediction equals the answer")
    register("vqa_accuracy", "prism.evaluation.metrics:vqa_accuracy",
             "VQA v2 accuracy: EvalAI normalisation, min(#matches/3, 1) over 10-choose-9 subsets")
    register("anls", "prism.evaluation.metrics:anls",
             "average normalised Levenshtein similarity, threshold 0.5 (DocVQA)")
    register("iou50", "prism.evaluation.metrics:iou50",
             "IoU@0.5 of a predicted [x1, y1, x2, y2] box against the target (grounding)")
    register("coco_caption", "prism.evaluation.metrics:coco_caption",
             "mean of BLEU-1..4, METEOR, ROUGE-L, CIDEr (x100) via pycocoevalcap")
