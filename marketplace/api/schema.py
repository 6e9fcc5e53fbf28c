"""Text of the OpenAPI document that the API docs page shows."""

#: The OpenAPI `info.description`: what the API does and how scripts sign in.
API_DESCRIPTION = """Rent VMs and services, sell capacity, follow provisioning.

**Authentication.** Scripts send an API token in every request:
`Authorization: Token <key>`. Create the token on the API token page of your account
(`/account/api-token/`); it is shown once, right after it is created, and you can regenerate
or revoke it there. Token requests need no CSRF token. A missing, invalid or revoked token gets
401. In the browser, these docs use your signed-in session instead, and session requests that
change data need the CSRF token.
"""
