"""The google-cloud-storage client every layer uses.

With ``STORAGE_EMULATOR_HOST`` set (fake-gcs-server, the local stack), the client is anonymous
with a fixed project and the GCE metadata probe is turned off; otherwise it uses
application-default credentials (workload identity, ``gcloud auth application-default login``).
"""

from __future__ import annotations

import os

EMULATOR_PROJECT = "riverbeam-local"


def gcs_client():
    """A `google.cloud.storage.Client`: anonymous on an emulator, application-default credentials otherwise."""
    from google.cloud import storage

    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        from google.auth.credentials import AnonymousCredentials

        os.environ.setdefault("NO_GCE_CHECK", "true")
        project = os.environ.get("GOOGLE_CLOUD_PROJECT", EMULATOR_PROJECT)
        return storage.Client(project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator})
    return storage.Client()
