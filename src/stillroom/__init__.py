"""stillroom: knowledge distillation, and defence of model APIs against it.

`stillroom.distill` compresses a teacher into a student; `stillroom.guard`
finds distillation campaigns in API traffic. Both sit on `stillroom.core`.
"""

__version__ = "0.1.0"
