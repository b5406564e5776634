"""deploy: the OpenAI-compatible server answers the official `openai` client, then stops."""

import socket
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")


def test_deploy_answers_the_openai_client_and_stops(trained):
    with trained.deploy(api_key="sk-test") as server:
        assert server.running and server.url == server.local_url
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test")
        models = client.models.list()
        assert [m.id for m in models.data] == ["truthgpt"]
        completion = client.completions.create(model="truthgpt", prompt="KING.", max_tokens=8, temperature=0)
        assert completion.choices[0].text and completion.usage.completion_tokens <= 8
        stream = client.completions.create(model="truthgpt", prompt="KING.", max_tokens=8, temperature=0, stream=True)
        assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == completion.choices[0].text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()
        host, port = server.local_url.removeprefix("http://").split(":")
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    server.stop()  # a second stop does nothing


def test_deploy_endpoint_is_advertised_and_checked(trained):
    with trained.deploy(endpoint="https://api.example.com/") as server:
        assert server.url == "https://api.example.com"
        with urllib.request.urlopen(server.local_url + "/ready", timeout=10) as response:
            assert response.status == 200
    for bad in ["api.example.com", "ftp://x", "https://", "http://host:notaport"]:
        with pytest.raises(ValueError, match="endpoint"):
            trained.deploy(endpoint=bad)


def test_deploy_on_a_taken_port_is_an_error(trained):
    with trained.deploy() as server:
        port = int(server.local_url.rsplit(":", 1)[1])
        with pytest.raises(Exception, match="listening on"):
            trained.deploy(port=port)
