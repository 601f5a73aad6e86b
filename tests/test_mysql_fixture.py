"""The MySQL fixtures reach a real server and give each session its own database."""

from __future__ import annotations

from tests.support.mysql import ServerAddress


def test_session_database_exists_and_is_writable(
    mysql_server: ServerAddress, mysql_database: str
) -> None:
    """A table created in the session database holds what is written to it."""
    conn = mysql_server.connect(mysql_database)
    with conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v DECIMAL(20,4))")
        cur.execute("INSERT INTO t VALUES (%s, %s)", (1, "12.3456"))
        cur.execute("SELECT v FROM t WHERE id = 1")
        (value,) = cur.fetchone()
        cur.execute("DROP TABLE t")
    conn.close()  # type: ignore[attr-defined]
    assert str(value) == "12.3456"


def test_server_address_repr_hides_the_password() -> None:
    """The repr of a server address never shows its password."""
    address = ServerAddress(host="h", port=1, user="u", password="s3cret-pw")
    assert "s3cret-pw" not in repr(address)
