"""System prompts for the VLM judge (T2I-Bench and Editing-Bench).

The structure follows Appendix A of the Qwen-Image-Flash paper (one dual-aspect T2I prompt, Table A; one edit
meta-template with three per-category slots, Tables B-D), but the wording is our own. The sub-score keys are the
ones in `world.categories.EDIT_SUBSCORE_KEYS`, so the judge's reply can be validated against them.

    t2i_system_prompt()                      -> str
    edit_system_prompt("text_editing")       -> str (title, rubric and sub-score keys of that category filled in)
"""

from __future__ import annotations

from string import Template

from flashdistill.errors import UserError
from flashdistill.world.categories import EDIT_CATEGORIES, EDIT_SUBSCORE_KEYS, EDIT_TITLES

_T2I_PROMPT = """\
You judge images produced by a text-to-image model. Score the image on two aspects that count equally: how \
faithfully it shows what the text prompt asks for, and how technically sound it is. Looking attractive earns \
nothing on its own: a clean, pleasing image that misses the prompt must receive a low score.

Prompt compliance: check that every object the prompt names is present, with the requested attributes (colour, \
size, material, pose, clothing), the requested counts, the requested actions and the requested spatial \
arrangement, and that any requested text is written exactly as given.

Technical quality: look for visible defects such as warped or broken shapes, impossible perspective, malformed \
faces, hands, limbs or bodies, smeared or melting textures, repeated or missing parts, garbled lettering or logos, \
blur, noise, compression blocks, jagged edges, over- or under-exposed regions, colour casts, implausible lighting \
and any other generation artifact.

Score levels: 5 = everything requested is there and the image is clean; 4 = a minor omission or a slight defect; \
3 = clearly incomplete or clearly flawed; 2 = most of the prompt is missing or the image is badly broken; \
1 = unrelated to the prompt or unusable. Judge what is visible, not artistic taste.

Reply with a single JSON object and nothing else (no markdown fences, no text before or after it):
{"score": <number from 1 to 5 with two decimals>, "reasoning": "<one short English sentence>"}"""

_EDIT_TEMPLATE = Template("""\
You judge the result of an instruction-guided image edit. You receive the edit instruction, the source image and \
the output image that an editing model produced from them. Decide whether the output carries out the requested \
change while keeping everything the instruction did not ask to change. A pretty output that does not perform the \
edit earns no credit. Do not penalise a stylistic choice unless it contradicts the instruction or adds visible \
defects. Spread your scores over the whole 1 to 5 range.

Score levels: 5 = the edit is done correctly, the content that should stay is kept, the change blends in \
naturally and artifacts are negligible; 4 = correct with small flaws; 3 = only partly done or with clear problems; \
2 = largely failed or visibly damaged; 1 = the instruction is ignored or the image is badly corrupted.

Category: $title
$rubric

Give a sub-score from 1 to 5 for each of these criteria, using exactly these keys and no others:
$criteria

overall_score is your holistic judgement, not the mean of the sub-scores. However, a bad failure of instruction \
following, of identity preservation or of text accuracy must keep overall_score low whatever the other criteria say.

Reply with a single JSON object and nothing else (no markdown fences, no text before or after it), with exactly \
these fields:
{"overall_score": <number from 1 to 5 with two decimals>, "sub_scores": {$schema_keys}, \
"reasoning": "<one short English sentence>", "failure_modes": ["<short phrase>", ...]}
failure_modes names each problem you saw in a few words; give an empty list if there is none.""")

# Per-category focus (same intent as the paper's Table C, own wording).
_CATEGORY_RUBRICS = {
    "scene_transformation": "What matters most here is that the scene as a whole is transformed correctly in "
    "meaning and stays physically plausible. Only an output that reads as one coherent photograph, not as pieces "
    "pasted together, deserves a high score.",
    "perceptual_enhancement": "The output should be clearer and cleaner than the source while staying faithful "
    "to it. Invented details or content that the source does not contain count as a defect, not an improvement.",
    "object_manipulation": "When an object is removed, the area it leaves must be filled in believably. When an "
    "object is added or swapped in, it must be clearly recognisable and sit naturally in the scene.",
    "text_editing": "Correct, legible text is decisive in this category. If the text is misspelled, wrong or "
    "unreadable, the score must be low even when the image otherwise looks good.",
    "identity_preserving": "Keeping the person recognisably the same is the core requirement. Penalise drift of "
    "the face or identity, unnatural anatomy, and changes to regions the instruction did not mention.",
    "style_transfer": "The new style should change how the image looks without erasing the source content or "
    "breaking its structure.",
}

# Sub-score criteria (same intent as the paper's Table D, own wording); keys must match EDIT_SUBSCORE_KEYS.
_VISUAL_QUALITY = "is the output technically clean: no distortion, smeared texture, blur, noise or other artifacts?"
_CRITERIA = {
    "scene_transformation": {
        "instruction_following": "is the requested change of scene, background or composition actually made?",
        "source_subject_preservation": "are the people, objects, identity, clothing and details that should "
        "carry over from the source still there and unchanged?",
        "global_consistency": "do perspective, scale, lighting, shadows and viewpoint agree across the new scene?",
        "boundary_integration": "are edges, masks, occlusions and foreground/background transitions clean?",
        "visual_quality": _VISUAL_QUALITY,
    },
    "perceptual_enhancement": {
        "instruction_following": "is the requested restoration, enhancement or upscaling carried out?",
        "content_preservation": "are content, identity, geometry, colours and layout of the source kept, unless "
        "the instruction says otherwise?",
        "detail_recovery": "are details sharper and cleaner without invented or over-smoothed structure?",
        "artifact_control": "is the result free of halos, over-sharpening, waxy skin, amplified noise and "
        "compression blocks?",
        "visual_quality": "does the enhanced image look natural and technically clean?",
    },
    "object_manipulation": {
        "instruction_following": "is the requested addition, removal, replacement or attribute change done?",
        "target_localization": "does the change hit the intended object or region and nothing else?",
        "source_preservation": "are the unrelated content, identity, background and composition of the source kept?",
        "physical_integration": "do scale, pose, lighting, shadows, contact, occlusion and perspective of the "
        "edited object fit the scene?",
        "visual_quality": "is the output free of seams, broken structure, duplicated parts, blur and artifacts?",
    },
    "text_editing": {
        "instruction_following": "is the requested text added, replaced, removed or changed as instructed?",
        "text_accuracy": "are spelling, characters, letter case, punctuation and wording exactly right?",
        "text_readability": "is the text legible, sharp, correctly oriented and not garbled or pseudo-text?",
        "layout_style_match": "does the text fit the original layout, font style, perspective, material, "
        "lighting and surface?",
        "source_preservation": "are the regions without text and unrelated details kept?",
        "visual_quality": "is the output free of artifacts, blur, warped letters and pasted-on overlays?",
    },
    "identity_preserving": {
        "instruction_following": "is the requested change of clothing, pose, expression, hair, make-up, age or "
        "face carried out?",
        "identity_preservation": "is it still recognisably the same person, with the key facial and body traits?",
        "attribute_accuracy": "are the attributes that were asked to change changed correctly and completely?",
        "anatomy_and_face_quality": "are face, hands, limbs, pose, gaze, expression and proportions natural and "
        "undistorted?",
        "source_preservation": "are unrelated clothing, background, accessories and composition kept, unless the "
        "instruction changes them?",
        "visual_quality": "is the portrait technically clean, coherent and free of artifacts?",
    },
    "style_transfer": {
        "instruction_following": "is the requested style, colour tone, filter or artistic look applied?",
        "content_preservation": "are the subject, structure, layout, identity and important details of the "
        "source kept?",
        "style_consistency": "is the style applied evenly over the whole image, without patchy or conflicting areas?",
        "naturalness": "are lighting, contrast, saturation, texture and materials coherent after the change?",
        "visual_quality": "is the output free of over-processing, colour banding, collapsed texture, blur and "
        "artifacts?",
    },
}

# Fail at import time if the criteria drift from the shared key list: a mismatch would make every reply invalid.
for _cat in EDIT_CATEGORIES:
    if tuple(_CRITERIA[_cat]) != tuple(EDIT_SUBSCORE_KEYS[_cat]) or _cat not in _CATEGORY_RUBRICS:
        raise RuntimeError(f"rubrics out of sync with EDIT_SUBSCORE_KEYS for category '{_cat}'")


def t2i_system_prompt() -> str:
    """The T2I-Bench judge prompt (dual aspect: prompt compliance and technical quality)."""
    return _T2I_PROMPT


def edit_system_prompt(category: str) -> str:
    """The Editing-Bench judge prompt for one edit category (title, rubric and exact sub-score keys filled in)."""
    if category not in _CRITERIA:
        raise UserError(f"unknown edit category '{category}' (one of {', '.join(EDIT_CATEGORIES)})")
    criteria = "\n".join(f"- {key}: {desc}" for key, desc in _CRITERIA[category].items())
    schema_keys = ", ".join(f'"{key}": <number from 1 to 5>' for key in _CRITERIA[category])
    return _EDIT_TEMPLATE.substitute(title=EDIT_TITLES[category], rubric=_CATEGORY_RUBRICS[category],
                                     criteria=criteria, schema_keys=schema_keys)
