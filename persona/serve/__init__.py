"""`persona serve`: the personas of the library as models behind OpenAI's HTTP API.

    run.py               load the model, bind TCP + the owner-only Unix socket, run uvicorn
    app.py               the FastAPI routes; schemas.py validates requests, errors.py shapes errors
    catalog.py           personas as model ids
    scheduler.py         the contract between HTTP and the model (Job, Generation, Scheduler)
    scheduler_serial.py  one reply at a time; scheduler_batch.py batches them
    stops.py             stop strings, cut the same way by every scheduler
    client.py            `persona reply` through a running server, over the Unix socket

Importing this package is cheap: nothing here imports torch until a server starts.
"""
