"""Category ids shared by the world, the benchmarks and the judges (names follow the paper, sections 3.2 and 5.1)."""

T2I_CATEGORIES = ("landscape", "portrait", "text")

EDIT_CATEGORIES = (
    "scene_transformation",  # scene-level semantic transformation
    "perceptual_enhancement",  # perceptual image enhancement
    "object_manipulation",  # object-centric manipulation
    "text_editing",  # textual content editing
    "identity_preserving",  # identity-preserving editing
    "style_transfer",  # stylistic transfer
)

EDIT_TITLES = {
    "scene_transformation": "Scene-level semantic transformation",
    "perceptual_enhancement": "Perceptual image enhancement",
    "object_manipulation": "Object-centric manipulation",
    "text_editing": "Textual content editing",
    "identity_preserving": "Identity-preserving editing",
    "style_transfer": "Stylistic transfer",
}

T2I_TITLES = {"landscape": "Landscape", "portrait": "Portrait", "text": "Text-centric"}

# Sub-score keys per edit category: the criteria of the paper's Table D, as snake_case keys.
EDIT_SUBSCORE_KEYS = {
    "scene_transformation": (
        "instruction_following", "source_subject_preservation", "global_consistency",
        "boundary_integration", "visual_quality",
    ),
    "perceptual_enhancement": (
        "instruction_following", "content_preservation", "detail_recovery", "artifact_control", "visual_quality",
    ),
    "object_manipulation": (
        "instruction_following", "target_localization", "source_preservation", "physical_integration",
        "visual_quality",
    ),
    "text_editing": (
        "instruction_following", "text_accuracy", "text_readability", "layout_style_match",
        "source_preservation", "visual_quality",
    ),
    "identity_preserving": (
        "instruction_following", "identity_preservation", "attribute_accuracy", "anatomy_and_face_quality",
        "source_preservation", "visual_quality",
    ),
    "style_transfer": (
        "instruction_following", "content_preservation", "style_consistency", "naturalness", "visual_quality",
    ),
}

T2I_SUBSCORE_KEYS = ("prompt_compliance", "technical_quality")
