"""API resources, one module per route family: completions, chat.completions, models, embeds."""

from pe_client.resources.chat import AsyncChat, AsyncChatCompletions, Chat, ChatCompletions
from pe_client.resources.completions import AsyncCompletions, Completions
from pe_client.resources.embeds import AsyncEmbeds, Embeds
from pe_client.resources.models import AsyncModels, Models

__all__ = [
    "AsyncChat",
    "AsyncChatCompletions",
    "AsyncCompletions",
    "AsyncEmbeds",
    "AsyncModels",
    "Chat",
    "ChatCompletions",
    "Completions",
    "Embeds",
    "Models",
]
