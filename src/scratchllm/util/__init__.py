"""Small pieces every stage needs, one idea a module: `errors` (the user-error type), `sizes` (size
strings), `files` (atomic writes, hashes), `disk` (free space and the one disk guard), `locks` (folder
locks), `fetch` (checked downloads through pip or from a URL, the cache folder), `log` (the library's
logger)."""
