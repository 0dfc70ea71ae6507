"""The platform's rows and API keys: one interface (`base.Store`, where all the SQL is), two
backends (`sqlite`, the default, and `postgres`, for several pods), opened by `opening`."""
