"""Routes in other services' shapes (Cohere, Weaviate, vLLM/OpenAI extras), all served through the same
embedding path as the native routes (`iei.server.routes._serve`)."""
