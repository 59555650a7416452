"""GraphQL service over both models: Strawberry, calling the two services over HTTP.

Named ``graphapi``, never ``graphql``: that name would shadow graphql-core.
"""
