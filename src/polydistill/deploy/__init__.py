"""polydistill.deploy"""
