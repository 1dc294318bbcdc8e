"""The demo leaves a freshrec.toml naming its home, so commands run afterwards in the same
folder see its data; it never replaces a user's file."""

from __future__ import annotations

from freshrec.demo import _point_here
from freshrec.settings import Settings


def test_the_demo_points_this_folder_at_its_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRESHREC_HOME", raising=False)
    monkeypatch.delenv("FRESHREC_CONFIG", raising=False)
    home = (tmp_path / ".freshrec" / "demo").resolve()
    note = _point_here(home)
    assert note.startswith(f"wrote {tmp_path / 'freshrec.toml'} (home = \".freshrec/demo\")")
    assert Settings.load().home == home
    assert _point_here(home) == f"{tmp_path / 'freshrec.toml'} names this home already"


def test_a_users_freshrec_toml_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = 'home = "/srv/shop"\ntop_n = 20\n'
    (tmp_path / "freshrec.toml").write_text(mine)
    assert _point_here((tmp_path / ".freshrec" / "demo").resolve()) is None
    assert (tmp_path / "freshrec.toml").read_text() == mine
