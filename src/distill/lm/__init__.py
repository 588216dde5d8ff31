"""What every stage of a language-model run shares: prompts and text (`data`), models
(`models`, `pruning`), decoding (`generation`, `watermark`), the sample shards
(`samples`), token bytes and tokenizer alignment (`token_bytes`, `alignment`,
`cross_tokenizer`), the distillation losses (`losses`, `chunked_head`) and validation
(`validation`)."""
