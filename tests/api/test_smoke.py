def test_upload_and_create(acme, training_file, create_job, api):
    r = create_job(acme, training_file)
    assert r.status_code == 200, r.content
    job = r.json()
    r = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", **acme.headers)
    assert r.status_code == 200, r.content
    print(job, r.json())
