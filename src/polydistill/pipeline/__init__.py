"""polydistill.pipeline"""
