"""`persona serve`: the personas of the library as models behind OpenAI's HTTP API.

    run.py               check the flags, load the model, bind TCP and the Unix socket, run uvicorn
    app.py               the FastAPI routes; schemas.py validates requests, responses.py shapes answers
    errors.py            OpenAI-shaped errors; guard.py: API key, body-size limit, request counts
    catalog.py           personas as model ids; archive.py saves conversations (--save-conversations)
    scheduler.py         the contract between HTTP and the model (Job, Generation, Scheduler)
    scheduler_serial.py  one reply at a time; scheduler_batch.py decodes many together
    metrics.py           /metrics; stop strings are cut by persona.engine.stops
    client.py            `persona reply` through a running server, over the Unix socket (identity.py)

Importing this package is cheap: nothing here imports torch until a server starts.
"""
