"""TEMPORARY"""
def list_transfers(*a, **k):
    return {'title': 'not yet'}, 501
def create_data_transfer(*a, **k):
    return {'title': 'not yet'}, 501
def get_data_transfer(*a, **k):
    return {'title': 'not yet'}, 501
def cancel_data_transfer(*a, **k):
    return {'title': 'not yet'}, 501
def create_s3_data_transfer(*a, **k):
    return {'title': 'not yet'}, 501
def get_s3_data_transfer(*a, **k):
    return {'title': 'not yet'}, 501
def cancel_s3_data_transfer(*a, **k):
    return {'title': 'not yet'}, 501
def create_s3_result_transfer(*a, **k):
    return {'title': 'not yet'}, 501
def get_s3_result_transfer(*a, **k):
    return {'title': 'not yet'}, 501
def cancel_s3_result_transfer(*a, **k):
    return {'title': 'not yet'}, 501
