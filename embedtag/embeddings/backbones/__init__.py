"""Backbone implementations; import them through ``embedtag.embeddings.registry``."""
