"""TEMPORARY"""
def list_jobs(*a, **k):
    return {'title': 'not yet'}, 501
def create_job(*a, **k):
    return {'title': 'not yet'}, 501
def get_job(*a, **k):
    return {'title': 'not yet'}, 501
def cancel_job(*a, **k):
    return {'title': 'not yet'}, 501
def get_job_output(*a, **k):
    return {'title': 'not yet'}, 501
