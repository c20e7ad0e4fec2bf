"""polydistill.reporting"""
