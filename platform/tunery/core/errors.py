"""OpenAI-shaped errors. (Placeholder until the control-plane work lands.)"""

from rest_framework.views import exception_handler


def openai_exception_handler(exc, context):
    return exception_handler(exc, context)
