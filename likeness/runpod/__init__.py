"""RunPod: the pods that train LoRAs, started, watched and terminated through the `runpod` SDK."""
